variable "name_prefix" {
  description = "Prefix of every droplet, firewall, tag and image name: one prefix per experiment."
  type        = string
  default     = "e3"
}

variable "regions" {
  description = "Regions of the MPyC parties, one droplet per region and index (party order follows the droplet names)."
  type        = list(string)
  default     = ["ams3", "nyc3", "sgp1"]
}

variable "parties_per_region" {
  description = "Party droplets in each region."
  type        = number
  default     = 1
}

variable "mediator_region" {
  description = "Region of the one mediator droplet."
  type        = string
  default     = "fra1"
}

variable "party_size" {
  description = "Droplet size of the parties."
  type        = string
  default     = "s-2vcpu-4gb"
}

variable "mediator_size" {
  description = "Droplet size of the mediator."
  type        = string
  default     = "s-1vcpu-2gb"
}

variable "nixos_image_url" {
  description = "URL of the NixOS DigitalOcean image (`nix build ./infra#do-image`, uploaded where DigitalOcean can fetch it). Ignored when nixos_image_id is set."
  type        = string
  default     = ""
}

variable "nixos_image_id" {
  description = "ID of an already uploaded NixOS custom image, instead of nixos_image_url."
  type        = number
  default     = null
}

variable "ssh_public_key_file" {
  description = "Public key the runner and Colmena log in with (as root); a public key is no secret."
  type        = string
  default     = "~/.ssh/id_ed25519.pub"
}

variable "admin_cidrs" {
  description = "Where SSH is allowed from."
  type        = list(string)
  default     = ["0.0.0.0/0", "::/0"]
}

# Ports: the defaults of services.didsession-mediator (infra/nixos/mediator.nix) and of
# didsession-mediator itself (mediator/config.py); infra/checks/terraform_ports.py checks
# that all three agree.
variable "mediator_port" {
  description = "The mediator's HTTP/WebSocket port (TCP): DIDComm, invitation, relay."
  type        = number
  default     = 8080
}

variable "stun_port" {
  description = "The mediator's STUN port, UDP and TCP."
  type        = number
  default     = 3478
}

variable "party_port" {
  description = "TCP port each party listens on for direct sessions (MPyC's default base port)."
  type        = number
  default     = 11365
}
