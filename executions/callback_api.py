"""`GET /api/callbacks/key/`: the key your functions' callbacks are signed with."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER, callback_key


class CallbackKeySerializer(serializers.Serializer):
    key = serializers.CharField(help_text="HMAC-SHA256 key of your callbacks' signatures.")
    signature_header = serializers.CharField()
    timestamp_header = serializers.CharField()


class CallbackKeyView(APIView):
    """The key that signs the callbacks of the functions you own (docs/callbacks.md)."""

    @extend_schema(responses={200: CallbackKeySerializer})
    def get(self, request):
        return Response({"key": callback_key(request.user).decode(),
                         "signature_header": SIGNATURE_HEADER,
                         "timestamp_header": TIMESTAMP_HEADER})
