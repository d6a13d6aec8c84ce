"""Stand-ins for the tests: tiny models and model files in the real formats, weights initialised
(the product never imports this package)."""
