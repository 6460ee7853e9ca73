{
  description = "didsession: packages, the mediator's NixOS module, and the E3 deployment (Terraform + Colmena)";

  # The flake lives in infra/ of the didsession repository and builds the repository's
  # pyproject.toml (../): use it from a git checkout (`nix build ./infra#didsession`), where
  # Nix copies the tracked files of the whole repository.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    colmena = {
      url = "github:zhaofengli/colmena";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      colmena,
      ...
    }:
    let
      lib = nixpkgs.lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };
      forAllSystems = f: lib.genAttrs systems (system: f system (pkgsFor system));

      # Read only with --impure (colmena apply --impure): pure evaluation sees "".
      env = name: builtins.getEnv name;
      orNull = value: if value == "" then null else value;
    in
    {
      overlays.default = import ./nix/overlay.nix;

      nixosModules = {
        # services.didsession-mediator (brings its own package if pkgs lacks the overlay).
        mediator = import ./nixos/mediator.nix;
        default = self.nixosModules.mediator;
      };

      packages = forAllSystems (
        system: pkgs:
        {
          didsession = pkgs.didsession;
          didsession-mediator = pkgs.didsession-mediator;
          # python3 with didsession and MPyC: `python prog.py --didcomm roster.json`
          python = pkgs.didsession-python;
          run-e3 = pkgs.writeShellApplication {
            name = "run-e3";
            runtimeInputs = [ pkgs.openssh ];
            text = ''exec ${pkgs.didsession-python}/bin/python ${./run-e3} "$@"'';
          };
          default = pkgs.didsession;
        }
        // lib.optionalAttrs (system == "x86_64-linux") {
          # The droplets' image: nix build ./infra#do-image, upload, terraform's nixos_image_url.
          do-image = self.nixosConfigurations.do-image.config.system.build.digitalOceanImage;
        }
      );

      nixosConfigurations.do-image = lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          "${nixpkgs}/nixos/modules/virtualisation/digital-ocean-image.nix"
          { system.stateVersion = "25.05"; }
        ];
      };

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            packages = [
              pkgs.didsession-python
              pkgs.opentofu # `tofu` runs infra/terraform as it is; terraform is unfree in nixpkgs
              colmena.packages.${system}.colmena
              pkgs.pssh
              pkgs.shellcheck
              pkgs.jq
              pkgs.openssh
            ];
          };
        }
      );

      # E3: nodes from Terraform's hosts JSON ($E3_HOSTS), keys from $E3_SECRETS.
      colmena = import ./hive.nix {
        inherit nixpkgs;
        didsession = self;
        hostsFile = orNull (env "E3_HOSTS");
        secretsDir = orNull (env "E3_SECRETS");
      };
      colmenaHive = colmena.lib.makeHive self.colmena;

      checks = forAllSystems (
        system: pkgs: {
          didsession = pkgs.didsession;
          # NixOS VM test: service up, STUN answered, invitation served (needs KVM).
          mediator = pkgs.testers.runNixOSTest ./nixos/tests/mediator.nix;
        }
      );
    };
}
