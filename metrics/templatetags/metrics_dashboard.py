"""`{% platform_dashboard %}` (admin index) and `{% function_dashboard function %}` (its page)."""

from django import template

from metrics.dashboard import function_context, platform_context

register = template.Library()


@register.inclusion_tag("admin/metrics/dashboard.html", takes_context=True)
def platform_dashboard(context):
    request = context.get("request")
    return {**platform_context(request), "heading": "Platform", "request": request}


@register.inclusion_tag("admin/metrics/dashboard.html", takes_context=True)
def function_dashboard(context, function):
    request = context.get("request")
    return {**function_context(request, function.pk), "heading": f"Function {function.name}",
            "request": request}
