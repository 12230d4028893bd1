import { useState } from 'preact/hooks';
import { api } from './api';

/// What a subscription receives beyond its event types: a filter expression
/// over the event (CEL) and the payload form.
export type Routing = { filter: string; payload: 'full' | 'thin' };

const SAMPLE = JSON.stringify(
  { type: 'inventory.moved', data: { warehouse: 'EU-2', quantity: 120, sku: 'A-100' } },
  null,
  2,
);

/// The routing fields of a subscription form, with a button that tests the
/// filter against a sample event on the server (the same compiler and
/// evaluator that fan-out uses), so what the editor says is what Herald does.
export function RoutingFields({ id, value, onChange }: { id: string; value: Routing; onChange: (r: Routing) => void }) {
  const [sample, setSample] = useState(SAMPLE);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);

  async function test() {
    setResult(null);
    let event: unknown;
    try {
      event = JSON.parse(sample);
    } catch (err) {
      setResult({ ok: false, text: `The sample event is not JSON: ${(err as Error).message}` });
      return;
    }
    try {
      const r = await api<{ matches: boolean }>('POST', '/portal/filters/test', { filter: value.filter, event });
      setResult({ ok: true, text: r.matches ? 'Matches: this event would be delivered.' : 'Does not match: this event would be skipped.' });
    } catch (err) {
      setResult({ ok: false, text: (err as Error).message });
    }
  }

  return (
    <fieldset class="grid routing">
      <legend>Routing</legend>
      <label for={`filter-${id}`}>
        Filter (optional, <abbr title="Common Expression Language">CEL</abbr> over the event, e.g.{' '}
        <code>data.warehouse == "EU-2" &amp;&amp; data.quantity &gt; 100</code>)
      </label>
      <textarea
        id={`filter-${id}`}
        rows={2}
        spellcheck={false}
        value={value.filter}
        onInput={(e) => onChange({ ...value, filter: (e.target as HTMLTextAreaElement).value })}
      />
      <label for={`sample-${id}`}>Sample event to test the filter with</label>
      <textarea id={`sample-${id}`} rows={4} spellcheck={false} value={sample} onInput={(e) => setSample((e.target as HTMLTextAreaElement).value)} />
      <div>
        <button type="button" onClick={test} disabled={!value.filter.trim()}>
          Test against the sample event
        </button>
      </div>
      {result && (
        <p role="status" data-testid={`filter-result-${id}`} class={result.ok ? 'notice' : 'error'}>
          {result.text}
        </p>
      )}
      <label for={`payload-${id}`}>Payload</label>
      <select id={`payload-${id}`} value={value.payload} onChange={(e) => onChange({ ...value, payload: (e.target as HTMLSelectElement).value as Routing['payload'] })}>
        <option value="full">Full: the whole event in each request</option>
        <option value="thin">Thin: id, type, tenant and times only; the receiver fetches the event</option>
      </select>
    </fieldset>
  );
}

/// The routing fields as a create or PATCH body adds them (an empty filter is none).
export function routingBody(r: Routing): { filter: string | null; payload: Routing['payload'] } {
  return { filter: r.filter.trim() ? r.filter.trim() : null, payload: r.payload };
}
