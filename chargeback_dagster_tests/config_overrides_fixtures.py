"""Callables of various shapes used by the override-validation tests in test_config.py."""


def allocator_ok(ctx):
    return []


def allocator_two_args(ctx, extra):
    return []


def allocator_optional_extra(ctx, extra=None):
    return []


def allocator_varargs(*args):
    return []


def resolver_ok(tenant_id, resource_id, billing_timestamp, billing_duration, metrics_data, store):
    return (), (), {}


def resolver_short(tenant_id, resource_id):
    return (), (), {}


class AllocatorClass:
    def __call__(self, ctx):
        return []


allocator_instance = AllocatorClass()

NOT_CALLABLE = 42
