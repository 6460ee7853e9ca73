# What the hive (infra/hive.nix) and the runner (infra/run-e3 --ssh) read:
#
#   terraform output -raw hosts_json > hosts.json
#   terraform output -raw pssh_hosts > pssh_hosts.txt
#
# hosts.example.json shows the shape.  Party order (the MPyC party ids) is the order of
# `hosts` entries with role "party": sorted by droplet name.

locals {
  mediator_url = "http://${digitalocean_droplet.mediator.ipv4_address}:${var.mediator_port}"

  mediator_host = {
    name     = digitalocean_droplet.mediator.name
    role     = "mediator"
    region   = digitalocean_droplet.mediator.region
    ipv4     = digitalocean_droplet.mediator.ipv4_address
    ipv6     = digitalocean_droplet.mediator.ipv6_address
    ssh      = "root@${digitalocean_droplet.mediator.ipv4_address}"
    platform = "digitalocean"
    deploy   = true
  }

  party_hosts = [
    for name, d in digitalocean_droplet.party : {
      name     = name
      role     = "party"
      region   = d.region
      ipv4     = d.ipv4_address
      ipv6     = d.ipv6_address
      ssh      = "root@${d.ipv4_address}"
      addr     = "${d.ipv4_address}:${var.party_port}"
      platform = "digitalocean"
      deploy   = true
    }
  ]
}

output "hosts_json" {
  description = "Every host, its role and addresses, and the mediator's URL and ports (JSON)."
  value = jsonencode({
    type    = "didsession-e3-hosts"
    version = 1
    mediator = {
      name      = digitalocean_droplet.mediator.name
      url       = local.mediator_url
      port      = var.mediator_port
      stun_port = var.stun_port
    }
    party_port = var.party_port
    hosts      = concat([local.mediator_host], local.party_hosts)
  })
}

output "pssh_hosts" {
  description = "The parties as a pssh/parallel-ssh hosts file (user@host, one a line)."
  value       = join("\n", [for h in local.party_hosts : h.ssh])
}

output "mediator_url" {
  description = "The mediator's public URL (settings.public_url on the mediator)."
  value       = local.mediator_url
}
