"""The clinician's flow: suggest, decide, write the note back to the chart."""
