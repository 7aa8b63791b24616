"""From a sweep's tracked runs to the study's report: reads the sweep from the tracking server,
writes the report, and logs it to one analysis run linked to the sweep (the only thing it writes there)."""
