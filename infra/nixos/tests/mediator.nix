# NixOS VM test of services.didsession-mediator (flake output checks.<system>.mediator; needs
# Nix and KVM):
#
#   nix build ./infra#checks.x86_64-linux.mediator -L
#
# Three machines on one VLAN: `mediator` (defaults: HTTP 8080, STUN 3478, firewall opened
# by the module), `lowport` (HTTP on port 80: the capability path) and `client`.  It proves:
#   - the service is up, hardened as declared, with its SQLite store in its StateDirectory;
#   - STUN is answered over UDP and TCP through the firewall (our client and coturn's);
#   - the invitation is served and a didsession identity accepts it;
#   - the mediator keeps its DID across a restart (keys in the StateDirectory);
#   - a misspelt setting is refused (the module's build-time check: see `badSettings`).
#
# Called with the flake's `pkgs` (which has the overlay) via pkgs.testers.runNixOSTest.
{ lib, ... }:

let
  mediatorModule = ../mediator.nix;
in
{
  name = "didsession-mediator";

  nodes = {
    mediator = {
      imports = [ mediatorModule ];
      services.didsession-mediator = {
        enable = true;
        openFirewall = true;
        settings = {
          public_url = "http://mediator:8080";
          label = "VM test mediator";
        };
      };
    };

    lowport = {
      imports = [ mediatorModule ];
      services.didsession-mediator = {
        enable = true;
        port = 80;
        openFirewall = true;
        settings.public_url = "http://lowport";
      };
    };

    client =
      { pkgs, ... }:
      {
        environment.systemPackages = [
          pkgs.curl
          pkgs.jq
          pkgs.coturn # turnutils_stunclient
          pkgs.didsession-python
        ];
      };
  };

  testScript = ''
    import json

    start_all()

    with subtest("the service is up, as a hardened DynamicUser"):
        mediator.wait_for_unit("didsession-mediator.service")
        mediator.wait_for_open_port(8080)
        mediator.wait_for_open_port(3478)
        props = mediator.succeed(
            "systemctl show didsession-mediator.service "
            "-p DynamicUser -p ProtectSystem -p PrivateUsers -p UMask -p MemoryDenyWriteExecute"
        )
        for want in ("DynamicUser=yes", "ProtectSystem=strict", "PrivateUsers=yes",
                     "UMask=0077", "MemoryDenyWriteExecute=yes"):
            assert want in props, (want, props)
        mediator.succeed("test -s /var/lib/private/didsession-mediator/mediator.sqlite3")

    client.wait_for_unit("multi-user.target")

    with subtest("healthz through the firewall"):
        health = json.loads(client.succeed("curl -fsS http://mediator:8080/healthz"))
        assert health["status"] == "ok", health
        did = health["did"]

    with subtest("STUN is answered over UDP and TCP"):
        for transport in ("udp", "tcp"):
            out = client.succeed(
                "python3 -c 'import asyncio, sys; "
                "from didsession.stun_asyncio import stun_binding; "
                "r = asyncio.run(stun_binding(\"mediator\", 3478, transport=sys.argv[1], timeout=10)); "
                "print(r.mapped[0])' " + transport
            ).strip()
            client_ip = client.succeed("getent ahostsv4 client | head -n1 | cut -d' ' -f1").strip()
            assert out == client_ip, (transport, out, client_ip)
        client.succeed(f"turnutils_stunclient -p 3478 mediator | grep -q 'UDP reflexive addr: {client_ip}:'")

    with subtest("the invitation is served and accepted"):
        url = client.succeed("curl -fsS http://mediator:8080/invitation.url").strip()
        assert "_oob=" in url, url
        inv = json.loads(client.succeed("curl -fsS http://mediator:8080/invitation"))
        assert inv["from"] == did, (inv, did)
        client.succeed("didsession init --home /tmp/h --name vm")
        client.succeed(f"didsession accept --home /tmp/h --alias mediator '{url}'")
        client.succeed("didsession contacts --home /tmp/h | grep -q mediator")

    with subtest("the DID survives a restart"):
        mediator.systemctl("restart didsession-mediator.service")
        mediator.wait_for_unit("didsession-mediator.service")
        mediator.wait_for_open_port(8080)
        again = json.loads(client.succeed("curl -fsS http://mediator:8080/healthz"))
        assert again["did"] == did, (again, did)

    with subtest("port 80 works through the capability"):
        lowport.wait_for_unit("didsession-mediator.service")
        lowport.wait_for_open_port(80)
        props = lowport.succeed(
            "systemctl show didsession-mediator.service -p AmbientCapabilities -p PrivateUsers"
        )
        assert "cap_net_bind_service" in props, props
        assert "PrivateUsers=no" in props, props
        client.succeed("curl -fsS http://lowport/healthz | jq -e '.status == \"ok\"'")
  '';
}
