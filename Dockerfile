# One image for the ingress and every pool; the command picks which (see compose.yaml).
# CI does not build this image (no container daemon there): tests/test_packaging.py runs these
# install and start commands in a fresh virtualenv from the built wheel instead.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# /app/var: the embedded SQLite store and .eml outbox, used when SUPABASE_URL / SMTP_URL are unset.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home fanout && mkdir -p /app/var && chown fanout /app/var
WORKDIR /app
# The routing table is configuration, not code: mount your own over it, or set ROUTING_FILE.
COPY routing.yaml .
USER fanout
EXPOSE 8000
# Platforms that choose the port (Railway, Heroku, Fly) set PORT.
CMD ["sh", "-c", "exec fanout ingress --host 0.0.0.0 --port \"${PORT:-8000}\""]
