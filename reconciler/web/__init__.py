"""The pool seen over HTTP: Prometheus metrics, a health check, the status as JSON and
a status page, served by the controller when ``spec.metrics.listen`` is set
(``serving`` follows the spec, ``server`` answers, ``endpoints`` reads the pool)."""
