"""The studies of the lesson, one module each; configs live in experiments/configs/."""
