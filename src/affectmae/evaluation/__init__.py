"""The official ABAW metrics, submission files and scoring."""
