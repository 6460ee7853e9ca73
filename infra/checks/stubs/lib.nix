# A minimal stand-in for nixpkgs' lib, for evaluating infra/*.nix offline (no nixpkgs, no
# store).  It implements what flake.nix, hive.nix, nix/ and nixos/mediator.nix call, as plain
# data: mkOption returns its arguments, mkIf a tagged record, types are named tags.  A
# function missing here means the Nix code started using something new: add it, keeping
# nixpkgs' semantics for the arguments the checks use.
let
  tag = name: extra: { _type = "option-type"; inherit name; } // extra;
in
rec {
  genAttrs = names: f: builtins.listToAttrs (map (n: nameValuePair n (f n)) names);
  nameValuePair = name: value: { inherit name value; };
  optionalAttrs = cond: attrs: if cond then attrs else { };
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  importTOML = path: builtins.fromTOML (builtins.readFile path);
  getExe' = pkg: exe: "${pkg.outPath or pkg}/bin/${exe}";
  getExe = pkg: getExe' pkg (pkg.meta.mainProgram or pkg.pname);
  mapAttrs = builtins.mapAttrs;
  filterAttrs =
    pred: set:
    builtins.listToAttrs (
      builtins.filter (nv: pred nv.name nv.value) (
        map (n: nameValuePair n set.${n}) (builtins.attrNames set)
      )
    );

  fileset = {
    unions = paths: { _type = "fileset"; inherit paths; };
    toSource = { root, fileset }: { _type = "source"; inherit root fileset; };
  };

  licenses = {
    mit = "MIT";
    asl20 = "Apache-2.0";
  };
  platforms.linux = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  # The module system, as data.
  mkOption = attrs: { _type = "option"; } // attrs;
  mkEnableOption = what: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${what}.";
  };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  types = {
    bool = tag "bool" { };
    str = tag "str" { };
    path = tag "path" { };
    package = tag "package" { };
    port = tag "port" { };
    int = tag "int" { };
    nullOr = t: tag "nullOr" { elemType = t; };
    listOf = t: tag "listOf" { elemType = t; };
    attrsOf = t: tag "attrsOf" { elemType = t; };
    submodule = m: tag "submodule" { module = m; };
  };

  # nixpkgs.lib.nixosSystem: the configuration is not evaluated here.
  nixosSystem = args: {
    _type = "nixosSystem";
    inherit args;
    config.system.build.digitalOceanImage = "/nix/store/stub-digital-ocean-image";
  };
}
