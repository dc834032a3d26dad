import AttestationCore
import Foundation
import Policy
import Synchronization

/// The policy in force: a version from the policy history and its document. Admission reads a
/// snapshot per decision, so every decision names the exact version it was taken under.
public struct ActivePolicy: Sendable {
    public let version: Int
    public let document: PolicyDocument
    /// The document's text, as signed.
    public let text: String
    /// SHA-256 of the text (lowercase hex): how clients and receipts name the policy.
    public let sha256: String
    /// The serial of the signature it was verified with (0: unsigned). Held here, not re-read:
    /// a writer of the store who blanks the stored signature must not lower the bar a newer
    /// version has to clear.
    public let serial: Int64

    public init(version: Int, document: PolicyDocument, text: String, serial: Int64 = 0) {
        self.version = version
        self.document = document
        self.text = text
        self.serial = serial
        sha256 = HashAlgorithm.sha256.hash(Data(text.utf8)).hex
    }
}

public final class PolicyState: Sendable {
    private let active: Mutex<ActivePolicy>

    public init(_ initial: ActivePolicy) { active = Mutex(initial) }

    public var current: ActivePolicy { active.withLock { $0 } }

    package func replace(with policy: ActivePolicy) { active.withLock { $0 = policy } }
}
