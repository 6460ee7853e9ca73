"""Run unmodified MPyC programs with ``--didcomm`` (their links carried by sessions).

Not built yet: the MPyC issue brings it.  The package exists so the layout is fixed.
"""
