"""Serving: the recommender service, the business rules and the model holder, used by the API
and the dashboard alike (and by evaluation, so that what is measured is what is served)."""
