"""Small scikit-learn classifiers fitted on the few labeled rows of a feature file."""
