"""AES-128 on secret-shared bytes: a scalar-heavy workload (thousands of tiny messages).

    python aes.py [BLOCKS]     encrypt BLOCKS blocks one after the other (default 2)

The key and the plaintext are secret-shared GF(2^8) elements; each S-box is x^254 followed
by the affine map on its bits, so every round is a chain of secure operations on single
bytes.  Checked against FIPS-197 appendix C.1: the first block must
encrypt to 69c4e0d86a7b0430d8cdb78070b4c55a.
"""

import sys

from mpyc.runtime import mpc

secfld = mpc.SecFld(2**8)  # GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1
gf = secfld.field

# The S-box's affine map over GF(2): bit i of the output is the XOR of input bits
# i, i+4, i+5, i+6, i+7 (mod 8), then XOR 0x63.
AFFINE = [[gf(1 if (j - i) % 8 in (0, 4, 5, 6, 7) else 0) for j in range(8)] for i in range(8)]
CONSTANT = [gf((0x63 >> i) & 1) for i in range(8)]
MIX = [[2, 3, 1, 1], [1, 2, 3, 1], [1, 1, 2, 3], [3, 1, 1, 2]]


def sbox(x):
    """S-box: the inverse x^254 (0 for 0), then the affine map on its bits."""
    bits = mpc.to_bits(x**254)
    out = mpc.vector_add(mpc.matrix_prod([bits], AFFINE, True)[0], CONSTANT)
    return mpc.from_bits(out)


def xtime_mix(column):
    return [sum((gf(c) * v for c, v in zip(row, column, strict=True)), secfld(0)) for row in MIX]


def expand_key(key):
    words = [key[4 * i : 4 * i + 4] for i in range(4)]
    rcon = gf(1)
    for i in range(4, 44):
        t = list(words[-1])
        if i % 4 == 0:
            t = [sbox(b) for b in t[1:] + t[:1]]
            t[0] = t[0] + rcon
            rcon = rcon * gf(2)
        words.append([a + b for a, b in zip(words[i - 4], t, strict=True)])
    return [[b for w in words[4 * r : 4 * r + 4] for b in w] for r in range(11)]


def encrypt(round_keys, block):
    state = [a + k for a, k in zip(block, round_keys[0], strict=True)]
    for r in range(1, 11):
        state = [sbox(b) for b in state]
        state = [state[(i + 4 * (i % 4)) % 16] for i in range(16)]  # ShiftRows, column-major
        if r < 10:
            state = [b for c in range(4) for b in xtime_mix(state[4 * c : 4 * c + 4])]
        state = [a + k for a, k in zip(state, round_keys[r], strict=True)]
    return state


async def main() -> None:
    blocks = int(sys.argv[1]) if sys.argv[1:] else 2
    await mpc.start()
    key = [secfld(i) for i in range(16)]
    block = [secfld(17 * i) for i in range(16)]
    round_keys = expand_key(key)
    for n in range(blocks):
        block = encrypt(round_keys, block)
        out = bytes(int(v) for v in await mpc.output(block))
        print(f"block {n}: {out.hex()}")
    await mpc.shutdown()


mpc.run(main())
