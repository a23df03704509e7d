"""Hardware in the loop: dyad physiology with ground truth, sensor emulators, scenarios."""
