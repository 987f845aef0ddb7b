"""Swin-X Seg network definition, checkpoint loading, export, phantoms and training.

Needed to train and to export; the serving path (``service``) only loads exported artifacts.
"""
