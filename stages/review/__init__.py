"""Correction loop: rank suspicious pseudo labels for review, fold corrected masks back."""
