"""An AWS Lambda function behind API Gateway (REST API proxy integration), as written for Lambda.

Runs unchanged on KubeFunction with the `lambda` convention (docs/porting.md):

    manage.py register_function orders examples/functions/lambda_orders.py --convention lambda
"""

import json


def lambda_handler(event, context):
    query = event.get("queryStringParameters") or {}
    order = json.loads(event["body"]) if event.get("body") else None
    return {
        "statusCode": 201 if event["httpMethod"] == "POST" else 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({
            "method": event["httpMethod"],
            "path": event["path"],
            "q": query.get("q"),
            "order": order,
            "request_id": context.aws_request_id,
        }),
    }
