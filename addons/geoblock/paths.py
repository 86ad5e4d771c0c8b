"""Default locations, relative to this repository."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RULES = os.path.join(REPO, "rules")
DEFAULT_GEOIP_DIR = os.path.join(REPO, "data", "geoip")
DEFAULT_COUNTRY_DB = os.path.join(DEFAULT_GEOIP_DIR, "GeoLite2-Country.mmdb")
DEFAULT_ASN_DB = os.path.join(DEFAULT_GEOIP_DIR, "GeoLite2-ASN.mmdb")
DEFAULT_LOG = os.path.join(REPO, "logs", "decisions.jsonl")
