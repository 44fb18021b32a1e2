"""Solar System processing for alert production: orbits, ephemerides, SSO association,
daily products (H, G12) and HelioLinC-style linking. See ``docs/sso.md``."""
