# Evaluates infra/ offline against the stubs in ./stubs and returns facts as JSON, which
# infra/checks/check.py (and tests/test_infra_offline.py) compare with what they expect:
#
#   nix-instantiate --store dummy:// --eval --strict --json infra/checks/eval.nix \
#     [--argstr secretsDir /some/dir]
#
# What this proves: flake.nix's `outputs` evaluates with stub inputs and has the outputs the
# issue names; the overlay and every package derivation evaluate (each argument resolves);
# the NixOS module is a function whose options and systemd unit are as declared, for the
# default ports and for a port below 1024; the hive has one node per deployable host of
# terraform/hosts.example.json with the right role, and its keys are plain strings outside
# the store.  What it cannot prove: that nixpkgs has these package names and option types,
# that builds succeed, that the VM test passes (those need Nix and its store: `nix flake
# check ./infra`).
{
  secretsDir ? null,
}:

let
  lib = import ./stubs/lib.nix;
  stubNixpkgs = {
    outPath = ./stubs/nixpkgs;
    inherit lib;
  };
  stubColmena = import ./stubs/colmena.nix;

  flake = import ../flake.nix;
  self = flake.outputs {
    inherit self;
    nixpkgs = stubNixpkgs;
    colmena = stubColmena;
  };

  pkgs = import ./stubs/nixpkgs { overlays = [ self.overlays.default ]; };

  # --- the NixOS module, called as the module system would ----------------------------
  module = self.nixosModules.mediator;
  evalModule =
    cfg:
    let
      full = {
        enable = true;
        package = pkgs.didsession-mediator;
        port = 8080;
        stunPort = 3478;
        openFirewall = true;
        environmentFile = null;
        settings = {
          host = "0.0.0.0";
          data_dir = "/var/lib/didsession-mediator";
          port = cfg.port or 8080;
          stun_port = cfg.stunPort or 3478;
        };
      } // cfg;
      result = module {
        inherit lib pkgs;
        config.services.didsession-mediator = full;
      };
      content = result.config.content;
      unit = content.systemd.services.didsession-mediator;
    in
    {
      enabledWhen = result.config.condition;
      settings = content.services.didsession-mediator.settings;
      firewall = {
        when = content.networking.firewall.condition;
        tcp = content.networking.firewall.content.allowedTCPPorts;
        udp = content.networking.firewall.content.allowedUDPPorts;
      };
      inherit (unit) wantedBy after;
      serviceConfig = builtins.removeAttrs unit.serviceConfig [ "ExecStart" ];
      execStart = unit.serviceConfig.ExecStart;
    };

  optionFacts =
    let
      options = (module {
        inherit lib pkgs;
        config.services.didsession-mediator = {
          enable = false;
          port = 8080;
          stunPort = 3478;
          settings = { };
        };
      }).options.services.didsession-mediator;
    in
    builtins.mapAttrs (
      name: opt:
      {
        type = opt.type.name;
      }
      // lib.optionalAttrs (opt ? default && name != "package") { inherit (opt) default; }
      // lib.optionalAttrs (name == "settings") {
        freeform = opt.type.module.freeformType.name;
        subOptions = builtins.mapAttrs (_: o: o.default) opt.type.module.options;
      }
    ) options;

  # --- the hive -----------------------------------------------------------------------
  hive = import ../hive.nix {
    nixpkgs = stubNixpkgs;
    didsession = self;
    inherit secretsDir;
  };
  nodeNames = builtins.filter (n: n != "meta" && n != "defaults") (builtins.attrNames hive);
  nodeFacts =
    name:
    let
      modules = hive.${name}.imports;
      args = {
        inherit lib pkgs;
        modulesPath = "/stub/nixos/modules";
        config = { };
      };
      evaluated = map (m: if builtins.isFunction m then m args else m) modules;
      common = builtins.elemAt evaluated 0;
      role = builtins.elemAt evaluated 1;
      mediator = role.services.didsession-mediator or null;
    in
    {
      inherit (common.deployment) targetHost targetUser tags;
      hostName = common.networking.hostName;
      imports = common.imports;
      roleImportsModule = builtins.length (role.imports or [ ]) > 0;
      keys = builtins.mapAttrs (_: k: {
        keyFileType = builtins.typeOf k.keyFile;
        inherit (k) keyFile destDir permissions;
      }) (role.deployment.keys or { });
      mediator =
        if mediator == null then
          null
        else
          {
            inherit (mediator)
              enable
              openFirewall
              port
              stunPort
              environmentFile
              settings
              ;
          };
      partyTcpPorts = role.networking.firewall.allowedTCPPorts or [ ];
      packages = map (p: p.name) (role.environment.systemPackages or [ ]);
    };
in
{
  flake = {
    outputs = builtins.attrNames self;
    packages = builtins.mapAttrs (_: builtins.attrNames) self.packages;
    devShells = builtins.mapAttrs (_: builtins.attrNames) self.devShells;
    checks = builtins.mapAttrs (_: builtins.attrNames) self.checks;
    nixosModules = builtins.attrNames self.nixosModules;
    moduleIsFunction = builtins.isFunction self.nixosModules.mediator;
    colmenaHiveType = self.colmenaHive._type;
    vmTestIsModule = builtins.isFunction (import ../nixos/tests/mediator.nix);
    vmTestNodes = builtins.attrNames (import ../nixos/tests/mediator.nix { inherit lib; }).nodes;
    vmTestScript = (import ../nixos/tests/mediator.nix { inherit lib; }).testScript;
  };

  packages =
    let
      ds = self.packages.x86_64-linux.didsession;
    in
    {
      didsession = {
        inherit (ds) pname version;
        mainProgram = ds.meta.mainProgram;
        pyproject = ds.pyproject;
        buildSystem = map (p: p.pname) ds.build-system;
        dependencies = map (p: p.pname) ds.dependencies;
        importsCheck = ds.pythonImportsCheck;
        application = ds.application or false;
        # Every path the source is built from exists (relative to the repository).
        src = map (p: {
          path = toString p;
          exists = builtins.pathExists p;
        }) ds.src.fileset.paths;
      };
      mediatorMainProgram = self.packages.x86_64-linux.didsession-mediator.meta.mainProgram;
      pythonEnv = map (p: p.pname) self.packages.x86_64-linux.python.packages;
      wheels = map (
        n:
        let
          p = pkgs.python3Packages.${n};
        in
        {
          name = n;
          inherit (p) pname version format;
          url = p.src.url;
          hash = p.src.hash;
          dependencies = map (d: d.pname) (p.dependencies or [ ]);
        }
      ) [
        "aries-askar"
        "did-peer-2"
        "did-peer-4"
        "didcomm-messaging"
        "mpyc"
        "pydid"
      ];
      askarAarch64 = (import ./stubs/nixpkgs {
        system = "aarch64-linux";
        overlays = [ self.overlays.default ];
      }).python3Packages.aries-askar.src.url;
    };

  module = {
    options = optionFacts;
    defaults = evalModule { };
    lowPort = evalModule {
      port = 80;
    };
    withEnvironmentFile = evalModule {
      environmentFile = "/run/keys/didsession-mediator-env";
    };
  };

  hive = {
    nodes = nodeNames;
    metaDescription = hive.meta.description;
    defaults = hive.defaults;
    facts = lib.genAttrs nodeNames nodeFacts;
  };
}
