"""Acquisition-side publishers (ScanImage, Suite2p-live, C)."""
