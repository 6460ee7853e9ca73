# The E3 Colmena hive: one node per host in Terraform's `hosts_json` output whose `deploy`
# is true, in the role the output gives it (mediator or party).  The flake (flake.nix,
# outputs `colmena` and `colmenaHive`) calls this with its inputs:
#
#   cd infra/terraform && terraform output -raw hosts_json > hosts.json && cd ../..
#   E3_HOSTS=$PWD/infra/terraform/hosts.json E3_SECRETS=$HOME/.config/didsession-e3 \
#     colmena apply --config infra/flake.nix --impure
#
# (--impure: the hosts file and the secrets directory are read from outside the flake; without
# E3_HOSTS the hive is built from terraform/hosts.example.json, which is what the offline
# checks evaluate.)
#
# Secrets never enter the Nix store: they are `deployment.keys` whose `keyFile` is a string
# path on the deploying machine.  Colmena copies them to /run/keys (a tmpfs) over SSH on every
# apply.  Each is optional and deployed only when its file exists in E3_SECRETS:
#   didsession-mediator-env   DIDSESSION_MEDIATOR_* lines (for example a Redis URL with a
#                             password) -> the mediator's environmentFile
#   didsession-passphrase     the passphrase of each party's didsession identity: `run-e3
#                             --passphrase-file /run/keys/didsession-passphrase` creates
#                             encrypted identities and unlocks them for the run
{
  # nixpkgs: the flake input (lib, lib.nixosSystem's modules) or anything `import`able.
  nixpkgs,
  # This flake: overlays.default (the packages) and nixosModules.mediator.
  didsession,
  # Terraform's hosts_json, as a path or an absolute path string; null: the example.
  hostsFile ? null,
  # Directory of the key files above on the deploying machine (a string, not a path, so that
  # nothing is copied to the store); null: no keys.
  secretsDir ? null,
  system ? "x86_64-linux",
}:

let
  lib = nixpkgs.lib;

  inventory = builtins.fromJSON (
    builtins.readFile (if hostsFile == null then ./terraform/hosts.example.json else hostsFile)
  );
  mediatorInfo = inventory.mediator;
  partyPort = inventory.party_port or 11365;
  managed = builtins.filter (h: h.deploy or false) inventory.hosts;

  secret =
    name:
    let
      path = "${toString secretsDir}/${name}";
    in
    if secretsDir != null && builtins.pathExists path then path else null;

  key = keyFile: {
    inherit keyFile;
    destDir = "/run/keys";
    user = "root";
    group = "root";
    permissions = "0400";
    uploadAt = "pre-activation";
  };

  # Every host: reachable as its Terraform output says; tags select roles and regions
  # (`colmena apply --on @party`, `--on @ams3`).
  common =
    host:
    { modulesPath, ... }:
    {
      imports = lib.optional (
        (host.platform or "digitalocean") == "digitalocean"
      ) "${modulesPath}/virtualisation/digital-ocean-config.nix";

      deployment = {
        targetHost = host.ipv4;
        targetUser = "root";
        tags = [
          host.role
          (host.region or "unknown")
        ];
      };

      networking.hostName = host.name;
      networking.firewall.enable = true;
      services.openssh = {
        enable = true;
        settings.PasswordAuthentication = false;
      };
      nix.settings.experimental-features = [
        "nix-command"
        "flakes"
      ];
      time.timeZone = "UTC";
      system.stateVersion = "25.05";
    };

  mediatorRole =
    host:
    { pkgs, ... }:
    let
      envFile = secret "didsession-mediator-env";
    in
    {
      imports = [ didsession.nixosModules.mediator ];

      services.didsession-mediator = {
        enable = true;
        openFirewall = true;
        port = mediatorInfo.port;
        stunPort = mediatorInfo.stun_port;
        environmentFile = if envFile == null then null else "/run/keys/didsession-mediator-env";
        settings = {
          public_url = mediatorInfo.url;
          label = "didsession E3 mediator (${host.region or host.name})";
        };
      };

      deployment.keys = lib.optionalAttrs (envFile != null) {
        didsession-mediator-env = key envFile;
      };

      # Colmena's <name>-key.service puts the key in place after a reboot too.
      systemd.services.didsession-mediator = lib.mkIf (envFile != null) {
        after = [ "didsession-mediator-env-key.service" ];
        wants = [ "didsession-mediator-env-key.service" ];
      };

      environment.systemPackages = [ pkgs.didsession ];
    };

  partyRole =
    host:
    { pkgs, ... }:
    let
      passphrase = secret "didsession-passphrase";
    in
    {
      # python3 with didsession and MPyC (`python3 prog.py --didcomm roster.json`); its bin/
      # has the `didsession` command too, which infra/run-e3 calls over SSH.
      environment.systemPackages = [ pkgs.didsession-python ];
      networking.firewall.allowedTCPPorts = [ partyPort ];

      deployment.keys = lib.optionalAttrs (passphrase != null) {
        didsession-passphrase = key passphrase;
      };
    };

  node =
    host:
    {
      imports = [
        (common host)
        (if host.role == "mediator" then mediatorRole host else partyRole host)
      ];
    };
in
{
  meta = {
    description = "didsession E3: ${toString (builtins.length managed)} NixOS hosts from Terraform";
    nixpkgs = import nixpkgs {
      inherit system;
      overlays = [ didsession.overlays.default ];
    };
  };

  defaults = {
    # Build locally, copy closures: the droplets stay small.
    deployment.buildOnTarget = false;
  };
}
// builtins.listToAttrs (map (host: lib.nameValuePair host.name (node host)) managed)
