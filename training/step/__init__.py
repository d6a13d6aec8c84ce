"""One distillation step: the objective, the UNet passes and their feature taps, what the step keeps
in memory, and the guard that skips non-finite steps."""
