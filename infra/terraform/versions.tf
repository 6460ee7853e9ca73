# Pinned: `terraform init` fetches exactly these and records their hashes in
# .terraform.lock.hcl (commit that file once it exists; it cannot be made offline).
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "= 2.57.0"
    }
  }
}

# The API token comes from the environment (DIGITALOCEAN_TOKEN), never from a file here.
provider "digitalocean" {}
