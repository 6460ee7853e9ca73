# cp example.tfvars e3.tfvars; terraform apply -var-file=e3.tfvars
name_prefix        = "e3"
regions            = ["ams3", "nyc3", "sgp1", "blr1"]
parties_per_region = 1
mediator_region    = "fra1"
nixos_image_url    = "https://example.org/nixos-e3-digitalocean.qcow2.gz"
