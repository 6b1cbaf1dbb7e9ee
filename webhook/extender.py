"""Scheduler extender (filter and prioritize) served beside the admission endpoints."""

from flask import Blueprint

blueprint = Blueprint("extender", __name__)
