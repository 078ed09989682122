"""Delivery plugins that push finished images into business systems (CRM, OA, DAM, webhooks).

Plugins register through the ``imagegate.connectors`` entry-point group. This package never imports gateway
internals; the gateway uses it through its small base modules.
"""
