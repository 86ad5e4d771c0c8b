"""geoblock's errors: one root, so a caller can catch every error geoblock raises."""
class GeoblockError(Exception):
    """The root of every error geoblock raises."""
