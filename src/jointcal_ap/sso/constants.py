"""Physical constants and fixed frames of the Solar System code (units: au, day, radian).

Everything here is a number from a cited source, in the units the kernels use:

- distances in au (IAU 2012 Resolution B2: 1 au = 149 597 870 700 m exactly);
- times in days of TDB (86 400 s);
- the Sun's gravitational parameter ``GM_SUN`` = k², k the Gaussian gravitational constant
  0.01720209895 au^1.5 / day, the value the MPC and JPL small-body elements use
  (DE421's GM_sun agrees to 1e-12);
- the speed of light c = 299 792 458 m/s;
- the **ecliptic frame** of orbital elements: the MPC and JPL give elements referred to
  the *mean ecliptic and equinox of J2000*, realised as a rotation of the ICRF about its
  x axis by the IAU 1976 obliquity ε₀ = 84381.448″ (no frame bias, no precession). JPL
  Horizons' "ecliptic of J2000.0" and astropy's ``HeliocentricEclipticIAU76`` use the same
  rotation. (The IAU 2006 value 84381.406″ differs by 42 mas, which matters at our
  10 mas goal.)

>>> round(AU_KM), round(C_AU_PER_DAY, 3)
(149597871, 173.145)
>>> import numpy as np
>>> bool(np.allclose(ECLIPTIC_TO_ICRS @ ICRS_TO_ECLIPTIC, np.eye(3)))
True
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "AU_KM",
    "AU_PER_DAY_TO_KM_PER_S",
    "C_AU_PER_DAY",
    "DAY_S",
    "ECLIPTIC_TO_ICRS",
    "GAUSSIAN_K",
    "GM_SUN",
    "ICRS_TO_ECLIPTIC",
    "OBLIQUITY_J2000_RAD",
    "TT_MINUS_TAI_S",
]

#: The astronomical unit in km (IAU 2012 B2, exact).
AU_KM = 149_597_870.700
#: Seconds per day.
DAY_S = 86_400.0
#: au/day → km/s.
AU_PER_DAY_TO_KM_PER_S = AU_KM / DAY_S
#: The Gaussian gravitational constant, au^1.5 / day.
GAUSSIAN_K = 0.01720209895
#: GM of the Sun, au³/day² (k²).
GM_SUN = GAUSSIAN_K**2
#: Speed of light, au/day.
C_AU_PER_DAY = 299_792.458 * DAY_S / AU_KM
#: TT − TAI, seconds (exact by definition).
TT_MINUS_TAI_S = 32.184
#: Obliquity of the J2000 mean ecliptic used by the MPC/JPL ecliptic frame (IAU 1976), rad.
OBLIQUITY_J2000_RAD = np.radians(84381.448 / 3600.0)

_c, _s = np.cos(OBLIQUITY_J2000_RAD), np.sin(OBLIQUITY_J2000_RAD)
#: Rotation taking ecliptic-J2000 vectors to ICRS (equatorial) ones: v_icrs = M @ v_ecl.
ECLIPTIC_TO_ICRS = np.array([[1.0, 0.0, 0.0], [0.0, _c, -_s], [0.0, _s, _c]])
#: Its inverse (the transpose).
ICRS_TO_ECLIPTIC = ECLIPTIC_TO_ICRS.T.copy()
ECLIPTIC_TO_ICRS.setflags(write=False)
ICRS_TO_ECLIPTIC.setflags(write=False)
del _c, _s
