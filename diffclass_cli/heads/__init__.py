"""Small scikit-learn classifiers fitted on the few labeled rows of a feature file."""

# The unlabeled rows the semi head clusters at most: past this, a sample (README "Scale" measures the choice).
MAX_UNLABELED = 20_000
