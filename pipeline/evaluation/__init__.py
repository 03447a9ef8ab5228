"""Measuring samples: feature extractors, reference statistics, Frechet distances."""
