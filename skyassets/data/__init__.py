"""Tables skyassets reads at run time: instrument bandpasses and names (package data)."""
