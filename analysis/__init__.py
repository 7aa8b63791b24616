"""From tracked runs to the study's tables and figures. Reads the tracking server only."""
