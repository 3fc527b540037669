// A merchant's legacy app, written from PayFlow's webhook page: Node's crypto, the page's
// verifyWebhookSignature (hex HMAC-SHA256 over JSON.stringify of the parsed body, compared with
// timingSafeEqual), the body parsed as express.json() parses it. It answers 401 when the
// signature does not check, else 200 {"received":true}.
//
// With a second secret starting with whsec_, it also checks Standard Webhooks signatures the
// way their specification describes (base64 HMAC over "{id}.{timestamp}.{body}"), written here
// independently of payflow-edge's code.
//
// Usage: node payflow_page.js SECRET [STANDARD_WEBHOOKS_SECRET]
// Prints "listening PORT" once ready; GET /received lists what it accepted and refused.
const crypto = require('crypto');
const http = require('http');

const [secret, swSecret] = process.argv.slice(2);

// From PayFlow's page, as printed there.
function verifyWebhookSignature(payload, signature, secret) {
  const expectedSignature = crypto
    .createHmac('sha256', secret)
    .update(JSON.stringify(payload))
    .digest('hex');

  return crypto.timingSafeEqual(
    Buffer.from(signature),
    Buffer.from(expectedSignature)
  );
}

function verifyStandardWebhooks(raw, headers) {
  const key = Buffer.from(swSecret.slice('whsec_'.length), 'base64');
  const signed = `${headers['webhook-id']}.${headers['webhook-timestamp']}.${raw}`;
  const expected = crypto.createHmac('sha256', key).update(signed).digest('base64');
  return (headers['webhook-signature'] || '').split(' ').some((s) => s === `v1,${expected}`);
}

const seen = [];
http
  .createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/received') {
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify(seen));
    }
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (raw += c));
    req.on('end', () => {
      let ok = false;
      let id = null;
      try {
        const payload = JSON.parse(raw); // what express.json() hands the handler
        id = payload.id;
        if (req.headers['webhook-signature'] && swSecret) {
          ok = verifyStandardWebhooks(raw, req.headers);
        } else {
          ok = verifyWebhookSignature(payload, req.headers['x-payflow-signature'] || '', secret);
        }
      } catch {
        ok = false; // timingSafeEqual throws on a length mismatch: that is a refusal too
      }
      seen.push({ id, ok, signature: req.headers['x-payflow-signature'] || req.headers['webhook-signature'] || null });
      res.statusCode = ok ? 200 : 401;
      res.setHeader('content-type', 'application/json');
      res.end(ok ? '{"received":true}' : '{"error":"invalid signature"}');
    });
  })
  .listen(0, '127.0.0.1', function () {
    console.log(`listening ${this.address().port}`);
  });
