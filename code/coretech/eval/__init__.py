"""Scoring generated answers: key-technology extraction (tech), metrics (metrics), the report
users compare runs with (report) and the general-ability check through lm_eval (general)."""
