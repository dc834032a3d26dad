import Foundation
import Synchronization

/// The admitted workers. Routing picks, among the workers serving a model, the one with the
/// fewest requests in flight.
public final class WorkerRegistry: Sendable {
    public struct Summary: Sendable, Equatable {
        public let workerID: String
        public let models: [String]
        public let inFlight: Int
        public let admittedAt: Date
    }

    private struct Entry {
        let link: WorkerLink
        let admittedAt: Date
    }
    private let entries = Mutex<[String: Entry]>([:])

    public init() {}

    /// Registers an admitted worker; a previous session of the same worker id is returned so the
    /// caller can close it (one live session per worker).
    func add(_ link: WorkerLink, at time: Date) -> WorkerLink? {
        entries.withLock { e in
            let previous = e[link.workerID]?.link
            e[link.workerID] = Entry(link: link, admittedAt: time)
            return previous
        }
    }

    /// Removes a worker's session (only that session: a newer one under the same id stays).
    func remove(workerID: String, sessionID: String) {
        entries.withLock { e in
            if e[workerID]?.link.sessionID == sessionID { e.removeValue(forKey: workerID) }
        }
    }

    /// The least-loaded admitted worker serving `model`, not among `excluding`.
    public func pick(model: String, excluding: Set<String> = []) -> WorkerLink? {
        entries.withLock { e in
            e.values.map(\.link)
                .filter { $0.models.contains(model) && !excluding.contains($0.workerID) && !$0.isClosed }
                .min { ($0.inFlight, $0.workerID) < ($1.inFlight, $1.workerID) }
        }
    }

    public var models: [String] {
        entries.withLock { Array(Set($0.values.flatMap(\.link.models))).sorted() }
    }

    public var workers: [Summary] {
        entries.withLock { e in
            e.values.map { Summary(workerID: $0.link.workerID, models: $0.link.models, inFlight: $0.link.inFlight, admittedAt: $0.admittedAt) }
                .sorted { $0.workerID < $1.workerID }
        }
    }

    public func isAdmitted(_ workerID: String) -> Bool { entries.withLock { $0[workerID] != nil } }
}
