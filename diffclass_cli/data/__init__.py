"""Image sources and the one preprocessing path shared by training and featurizing."""
