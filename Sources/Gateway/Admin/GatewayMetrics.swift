import AdmissionCore
import AuditLog
import Foundation
import GatewayState
import Prometheus
import Synchronization

/// The gateway's Prometheus metrics, in a registry of its own (several gateways in one process,
/// as in tests, never share counters; nothing is bootstrapped process-wide).
///
/// Requests, their time to first byte, duration and tokens come from the usage meter as each
/// request ends; admissions, rejections, evictions, stake checks and audit append latency from
/// the audit trail as each batch commits (every decision is an entry, so none is missed or
/// counted twice); admitted workers and the ledger backlog are read at each scrape.
///
/// Label values are bounded: reasons are the stable reason codes and HTTP statuses three digits;
/// model names come from workers (a policy that binds no names lets a worker pick them), so at
/// most ``modelLabelLimit`` distinct ones are labels and the rest count as `other`. A client's
/// text never becomes a label.
public final class GatewayMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let workerGauges = Mutex<[WorkerSeries: Gauge]>([:])
    private let modelLabels = Mutex<Set<String>>([])
    static let modelLabelLimit = 64

    struct WorkerSeries: Hashable {
        let model: String
        let tier: String
    }

    /// The label a model name is counted under.
    func label(model: String) -> String {
        modelLabels.withLock { seen in
            if seen.contains(model) { return model }
            guard seen.count < Self.modelLabelLimit else { return "other" }
            seen.insert(model)
            return model
        }
    }

    static let latencyBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30),
        .seconds(60),
    ]
    static let appendBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
    ]
    static let rateBuckets: [Double] = [1, 5, 10, 20, 50, 100, 200, 500, 1000]

    public init() {}

    // The metrics, by name and help text.
    static var requests: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "requests", unitName: "total",
            helpText: "Requests served to the end, by model and HTTP status.")
    }
    static var requestDuration: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "request_duration", unitName: "seconds",
            helpText: "Time from the request to the end of its response.")
    }
    static var timeToFirstToken: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "time_to_first_token", unitName: "seconds",
            helpText: "Time from the request to the first response byte sent.")
    }
    static var tokens: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "tokens", unitName: "total",
            helpText: "Tokens counted in the usage ledger, by model and kind.")
    }
    static var completionTokensPer: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "completion_tokens_per", unitName: "second",
            helpText: "Completion tokens per second of generation (after the first byte), per request.")
    }
    static var refusals: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "refusals", unitName: "total",
            helpText: "Requests refused by the front door before any worker, by HTTP status and error code.")
    }
    static var auditAppend: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "audit_append", unitName: "seconds",
            helpText: "Time to commit one group of audit entries durably.")
    }
    static var admissions: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "admissions", unitName: "total",
            helpText: "Admission decisions, by decision and first reason code.")
    }
    static var evictions: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "evictions", unitName: "total",
            helpText: "Evictions of admitted workers, by reason code.")
    }
    static var stakeChecks: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "stake_checks", unitName: "total",
            helpText: "Stake oracle checks of providers, by result.")
    }
    static var workersAdmitted: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "workers_admitted", unitName: "",
            helpText: "Admitted workers, by model served and assurance tier.")
    }
    static var usageLedgerBacklog: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "ccgate", metricName: "usage_ledger_backlog", unitName: "rows",
            helpText: "Usage ledger rows waiting to be written.")
    }

    /// A request that ended (its usage row).
    func request(_ row: UsageRecord) {
        let model = [("model", label(model: row.model))]
        registry.makeCounter(descriptor: Self.requests, labels: model + [("status", String(row.status))]).increment()
        registry.makeDurationHistogram(descriptor: Self.requestDuration, labels: model, buckets: Self.latencyBuckets)
            .recordNanoseconds(Int64(row.durationMs) * 1_000_000)
        if let ttft = row.timeToFirstTokenMs {
            registry.makeDurationHistogram(
                descriptor: Self.timeToFirstToken, labels: model, buckets: Self.latencyBuckets
            ).recordNanoseconds(Int64(ttft) * 1_000_000)
        }
        for (kind, count) in [("prompt", row.promptTokens), ("completion", row.completionTokens)] where count > 0 {
            registry.makeCounter(descriptor: Self.tokens, labels: model + [("kind", kind)]).increment(by: Int64(count))
        }
        let generating = max(1, row.durationMs - (row.timeToFirstTokenMs ?? 0))
        if row.completionTokens > 0 {
            registry.makeValueHistogram(descriptor: Self.completionTokensPer, labels: model, buckets: Self.rateBuckets)
                .record(Double(row.completionTokens) * 1000 / Double(generating))
        }
    }

    /// A front-door answer that never reached a worker (refused keys, limits, bad requests).
    func refused(status: Int, code: String) {
        registry.makeCounter(descriptor: Self.refusals, labels: [("status", String(status)), ("code", code)])
            .increment()
    }

    /// Entries just committed to the audit chain, and how long their commit took.
    func committed(_ entries: [AuditEntry], in duration: Duration) {
        registry.makeDurationHistogram(descriptor: Self.auditAppend, buckets: Self.appendBuckets).record(duration)
        for entry in entries {
            let e = entry.event
            let reason = e.reasons.first ?? "none"
            switch e.event {
            case "admission":
                registry.makeCounter(
                    descriptor: Self.admissions, labels: [("decision", e.decision ?? ""), ("reason", reason)]
                ).increment()
            case "eviction":
                registry.makeCounter(descriptor: Self.evictions, labels: [("cause", reason)]).increment()
            case "stake-check":
                registry.makeCounter(
                    descriptor: Self.stakeChecks, labels: [("result", e.decision ?? ""), ("reason", reason)]
                ).increment()
            default: break
            }
        }
    }

    /// The text a scrape answers: gauges read now, then everything.
    func scrape(registry workers: WorkerRegistry, ledger: UsageLedger?) -> [UInt8] {
        var counts = [WorkerSeries: Int]()
        for w in workers.workers {
            let tier = workers.tier(workerID: w.workerID)?.rawValue ?? "unknown"
            for model in w.models { counts[WorkerSeries(model: label(model: model), tier: tier), default: 0] += 1 }
        }
        workerGauges.withLock { gauges in
            for series in Set(gauges.keys).union(counts.keys) {
                let gauge =
                    gauges[series]
                    ?? registry.makeGauge(
                        descriptor: Self.workersAdmitted, labels: [("model", series.model), ("tier", series.tier)])
                gauges[series] = gauge
                gauge.set(Double(counts[series] ?? 0))
            }
        }
        if let ledger {
            registry.makeGauge(descriptor: Self.usageLedgerBacklog).set(Double(ledger.backlog))
        }
        return registry.emitToBuffer()
    }
}
