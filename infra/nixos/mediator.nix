# services.didsession-mediator: the didsession DIDComm v2 mediator, STUN server and session
# relay as a NixOS service.
#
#   services.didsession-mediator = {
#     enable = true;
#     openFirewall = true;                       # port (TCP), stunPort (TCP and UDP)
#     settings.public_url = "http://203.0.113.7:8080";
#   };
#
# `settings` is the mediator's TOML configuration (every name `didsession-mediator --help`
# lists, flat: `stun_rate = 5.0`, or in tables: `stun.rate = 5.0`); `port` and `stunPort` are
# written into it.  The file is checked with `didsession-mediator --print-config` when the
# system is built, so a misspelt setting fails the build, not the boot.  Secrets (a Redis
# URL with a password, ...) go in `environmentFile` as DIDSESSION_MEDIATOR_* variables: it is
# read by systemd, never copied to the Nix store.
#
# The service runs as a DynamicUser; its keys and SQLite store live in its StateDirectory
# (/var/lib/didsession-mediator, mode 0700).  The hardening is that of nixpkgs' coturn module
# (nixos/modules/services/networking/coturn.nix), with two differences explained below:
# AF_UNIX is allowed, and PrivateUsers is off when a port below 1024 needs the capability.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.didsession-mediator;
  settingsFormat = pkgs.formats.toml { };
  stateDir = "/var/lib/didsession-mediator";
  exe = lib.getExe' cfg.package "didsession-mediator";

  rawConfigFile = settingsFormat.generate "didsession-mediator.toml" cfg.settings;
  # The mediator refuses unknown names and unparsable values: find out at build time.
  configFile = pkgs.runCommand "didsession-mediator.toml" { } ''
    HOME=$TMPDIR ${exe} --config ${rawConfigFile} --print-config > /dev/null
    cp ${rawConfigFile} $out
  '';

  # Binding below 1024 needs CAP_NET_BIND_SERVICE, as in coturn's module.
  privilegedPort = cfg.port < 1024 || cfg.stunPort < 1024;
  capabilities = if privilegedPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];

  # This repository's build, whether or not the overlay was applied to pkgs.
  defaultPackage =
    pkgs.didsession-mediator or (pkgs.extend (import ../nix/overlay.nix)).didsession-mediator;
in
{
  options.services.didsession-mediator = {
    enable = lib.mkEnableOption "the didsession DIDComm v2 mediator, STUN server and session relay";

    package = lib.mkOption {
      type = lib.types.package;
      default = defaultPackage;
      defaultText = lib.literalExpression "pkgs.didsession-mediator";
      description = "The package providing `bin/didsession-mediator` (this repository's overlay).";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 8080;
      description = ''
        TCP port of the HTTP and WebSocket server: DIDComm (/didcomm, /ws), the invitation
        (/invitation, /invitation.url), the session relay (/relay), /healthz and /metrics.
        Written to the configuration as `port`.
      '';
    };

    stunPort = lib.mkOption {
      type = lib.types.port;
      default = 3478;
      description = "STUN port, served over UDP and TCP.  Written to the configuration as `stun_port`.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open `port` (TCP) and `stunPort` (TCP and UDP) in the firewall.";
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/keys/didsession-mediator.env";
      description = ''
        A file of `DIDSESSION_MEDIATOR_*=value` lines for settings that must not be in the
        Nix store (for example `DIDSESSION_MEDIATOR_STORE_REDIS_URL` with a password).  It is
        read by systemd as root before the service starts, so it may be mode 0400 root; give
        it as a string path so that it is not copied to the store.  The environment wins over
        `settings`.
      '';
    };

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
        options = {
          host = lib.mkOption {
            type = lib.types.str;
            default = "0.0.0.0";
            description = "Address the HTTP server (and, unless `stun_host` says otherwise, STUN) listens on.";
          };
          data_dir = lib.mkOption {
            type = lib.types.str;
            default = stateDir;
            description = ''
              Keys and the SQLite store.  The service can write only to its StateDirectory
              (${stateDir}); change this only together with `ReadWritePaths`.
            '';
          };
        };
      };
      default = { };
      example = lib.literalExpression ''
        {
          public_url = "https://mediator.example.org";
          label = "E3 mediator";
          stun_rate = 50.0;
          queue = { ttl = 86400.0; max_messages = 1000; };
        }
      '';
      description = ''
        The mediator's configuration file (TOML), see `didsession-mediator --help` for every
        name.  Set `public_url` to the URL the parties reach the mediator at: it is the
        service endpoint in the mediator's DID and in its invitation.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.didsession-mediator.settings = {
      port = cfg.port;
      stun_port = cfg.stunPort;
    };

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = [
        cfg.port
        cfg.stunPort
      ];
      allowedUDPPorts = [ cfg.stunPort ];
    };

    systemd.services.didsession-mediator = {
      description = "didsession DIDComm v2 mediator, STUN server and session relay";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];

      serviceConfig = {
        Type = "simple";
        ExecStart = "${exe} --config ${configFile}";
        Restart = "on-failure";
        RestartSec = 2;
        # SIGTERM: stop accepting, close WebSockets, finish requests, close the store.
        TimeoutStopSec = 30;

        DynamicUser = true;
        StateDirectory = "didsession-mediator";
        StateDirectoryMode = "0700";
        WorkingDirectory = stateDir;

        # Hardening, as nixpkgs' coturn module.
        AmbientCapabilities = capabilities;
        CapabilityBoundingSet = capabilities;
        DevicePolicy = "closed";
        LockPersonality = true;
        # Python, uvloop, SQLite and askar's ctypes callbacks run with W^X enforced (checked
        # with prctl(PR_SET_MDWE) on the mediator's tests).
        MemoryDenyWriteExecute = true;
        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateTmp = true;
        # coturn sets this unconditionally.  In a private user namespace a capability counts
        # only there, and the host's network namespace is not owned by it: binding a port
        # below 1024 would fail.  So: a user namespace unless the capability is needed.
        PrivateUsers = !privilegedPort;
        ProcSubset = "pid";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RemoveIPC = true;
        # coturn: AF_INET, AF_INET6 (+ AF_NETLINK to discover interfaces).  asyncio needs
        # AF_UNIX for its self-pipe (socket.socketpair) and a Redis store may use a socket.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
        UMask = "0077";
      }
      // lib.optionalAttrs (cfg.environmentFile != null) {
        EnvironmentFile = cfg.environmentFile;
      };
    };
  };
}
