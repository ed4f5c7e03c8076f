"""What a user runs: training, inference, evaluation, the demo. Built on the other packages."""
