//! Nothing here: the snapshots are in `tests/ui/`.
