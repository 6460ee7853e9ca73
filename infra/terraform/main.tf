# E3 on DigitalOcean: one NixOS droplet per party (in var.regions) and one mediator.
# Terraform only provisions; Colmena (infra/hive.nix) configures the machines from the
# `hosts_json` output, and infra/run-e3 runs the parties over SSH.

locals {
  parties = {
    for p in flatten([
      for region in var.regions : [
        for i in range(var.parties_per_region) : {
          name   = format("%s-party-%s-%d", var.name_prefix, region, i)
          region = region
        }
      ]
    ]) : p.name => p
  }

  image_regions = distinct(concat(var.regions, [var.mediator_region]))
  image         = var.nixos_image_id != null ? var.nixos_image_id : digitalocean_custom_image.nixos[0].image_id

  everywhere = ["0.0.0.0/0", "::/0"]
}

resource "digitalocean_custom_image" "nixos" {
  count        = var.nixos_image_id == null ? 1 : 0
  name         = "${var.name_prefix}-nixos"
  url          = var.nixos_image_url
  regions      = local.image_regions
  distribution = "Unknown"
  description  = "NixOS for didsession E3 (nix build ./infra#do-image)"
}

resource "digitalocean_ssh_key" "runner" {
  name       = "${var.name_prefix}-runner"
  public_key = file(pathexpand(var.ssh_public_key_file))
}

resource "digitalocean_tag" "e3" {
  name = var.name_prefix
}

resource "digitalocean_droplet" "mediator" {
  name     = "${var.name_prefix}-mediator-${var.mediator_region}"
  region   = var.mediator_region
  size     = var.mediator_size
  image    = local.image
  ipv6     = true
  ssh_keys = [digitalocean_ssh_key.runner.fingerprint]
  tags     = [digitalocean_tag.e3.id, "${var.name_prefix}-mediator"]
}

resource "digitalocean_droplet" "party" {
  for_each = local.parties

  name     = each.key
  region   = each.value.region
  size     = var.party_size
  image    = local.image
  ipv6     = true
  ssh_keys = [digitalocean_ssh_key.runner.fingerprint]
  tags     = [digitalocean_tag.e3.id, "${var.name_prefix}-party"]
}

# The mediator: what services.didsession-mediator.openFirewall opens (port TCP, stunPort
# TCP and UDP), plus SSH for Colmena.
resource "digitalocean_firewall" "mediator" {
  name        = "${var.name_prefix}-mediator"
  droplet_ids = [digitalocean_droplet.mediator.id]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "22"
    source_addresses = var.admin_cidrs
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = var.mediator_port
    source_addresses = local.everywhere
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = var.stun_port
    source_addresses = local.everywhere
  }

  inbound_rule {
    protocol         = "udp"
    port_range       = var.stun_port
    source_addresses = local.everywhere
  }

  inbound_rule {
    protocol         = "icmp"
    source_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "icmp"
    destination_addresses = local.everywhere
  }
}

# The parties: SSH, and the direct-session port the roster advertises.
resource "digitalocean_firewall" "party" {
  name        = "${var.name_prefix}-party"
  droplet_ids = [for d in digitalocean_droplet.party : d.id]

  inbound_rule {
    protocol         = "tcp"
    port_range       = "22"
    source_addresses = var.admin_cidrs
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = var.party_port
    source_addresses = local.everywhere
  }

  inbound_rule {
    protocol         = "icmp"
    source_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = local.everywhere
  }

  outbound_rule {
    protocol              = "icmp"
    destination_addresses = local.everywhere
  }
}
