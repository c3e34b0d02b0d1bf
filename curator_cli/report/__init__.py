"""Reports a person looks at: self-contained HTML pages with thumbnails read back from the source shards
(``page.py`` renders, ``thumbnails.py`` reads the images, ``sample.py`` reads an output within bounds,
``analysis.py`` projects and finds neighbours, ``output_report.py`` is ``curator show --html``)."""
