"""Training code. The inference library never imports from here."""
