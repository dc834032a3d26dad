import ArgumentParser
import AttestationCore
import CommandLineSupport
import Foundation

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Make Ed25519 keys for signing policies.", subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new Ed25519 key pair: NAME.key (private, mode 600) and NAME.pub.",
            discussion: """
                The files are standard PEM (PKCS #8 and SubjectPublicKeyInfo), interchangeable with openssl's. Give
                NAME.pub to gateways (`ccgate serve --admin-key NAME.pub`) and sign policies with NAME.key.

                Example:
                  ccgate keys generate --out admin
                """)
        @Option(help: ArgumentHelp("The key files' name without extension.", valueName: "NAME")) var out: String

        func run() throws {
            let key = Ed25519PrivateKey.generate()
            let keyPath = out + ".key", pubPath = out + ".pub"
            guard !FileManager.default.fileExists(atPath: keyPath) else {
                throw failure("\(keyPath) exists; not overwriting a key")
            }
            guard
                FileManager.default.createFile(
                    atPath: keyPath, contents: Data(key.pem.utf8), attributes: [.posixPermissions: 0o600])
            else {
                throw failure("\(keyPath): cannot write")
            }
            do { try key.publicKey.pem.write(toFile: pubPath, atomically: true, encoding: .utf8) } catch {
                throw failure("\(pubPath): \(error)")
            }
            print("\(keyPath), \(pubPath): Ed25519 key \(key.publicKey.fingerprint)")
        }
    }
}
