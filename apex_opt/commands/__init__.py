"""One click command per module; apex_opt.cli assembles them."""
