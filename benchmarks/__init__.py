"""Speed and scale measurements, run by ``make bench``; each writes JSON figures."""
