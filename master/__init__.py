"""ktstr-ci master side: settings, builders and schedulers as data, records DB, web pages."""
